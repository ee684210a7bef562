"""Notifications to team systems: subscriptions, the change log they receive, and its delivery worker."""
