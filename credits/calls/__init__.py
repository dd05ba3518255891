"""Call charging: the switch API, caller numbers and call records (traffic data)."""
