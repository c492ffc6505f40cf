"""Tenants and API keys: who is calling, and which tenant's rows they may see."""
