"""Outgoing network access: every request Graft sends to another host goes through here."""
