"""HTTP front doors: the native REST API, the per-instance metadata service (and, later, the
EC2 Query API). They parse, authenticate, hand work to the controller, and answer."""
