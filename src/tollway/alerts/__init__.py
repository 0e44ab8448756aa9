"""Alert webhooks: delivering what tollway.observe.alerts raises (see delivery)."""
