"""Provisioning for agents: domains, DNS records and deployments, bought through the broker."""
