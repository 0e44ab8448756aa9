"""Durable agents: definitions, sessions, tools, memory, guardrails and escalation."""
