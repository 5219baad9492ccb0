"""Test helpers shared across test packages: real cairn-server processes (server), throwaway
TLS certificates (certs) and a file-backed keyring for CLI subprocesses (file_keyring)."""
