"""The eval loop (issue 23 §5): sample agent sessions, grade them, compare
definition versions by replay, keep escalation answers as labelled examples."""
