"""Alerts: a state machine per (code, subject) that decides what to tell a human, and delivery."""
