"""Scheduled reboots with guest save/restore: time parsing, the on-disk journal, the run."""
