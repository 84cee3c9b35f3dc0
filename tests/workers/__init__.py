"""Code that tests start in other processes (under another backend, or several at once)."""
