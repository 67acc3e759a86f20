"""Shared test and bench support: real-server fixtures (servers), fault cases (billing_cases)."""
