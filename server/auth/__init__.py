"""Authentication: password hashes, signed device tokens, sign-in rate limits, the service."""
