"""Code shared by the Cairn client and server: object IDs, errors, crypto, formats, storage.

Nothing here imports Qt, aiohttp.web, client_gui or server, and importing has no side effects.
"""

FORMAT_VERSION = 1
