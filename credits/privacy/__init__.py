"""Privacy: the data inventory now; consents, notices, data requests and retention build on it."""
