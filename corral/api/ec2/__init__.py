"""The Amazon EC2 Query API (2016-11-15) over the same controller as the native REST API:
``parse`` and ``sigv4`` read and authenticate a request, one module per resource family
answers it, ``xml`` writes the answer. Mounted at ``/`` by ``corral.api.app``."""
