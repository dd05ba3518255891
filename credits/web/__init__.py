"""Shared HTTP plumbing: error mapping, headers, auth decorators."""
