"""Experiments: scenarios that run components side by side and write records, tables and figures."""
