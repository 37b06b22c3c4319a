"""Images: recipes and builders, the content-addressed image store. A library used by both the
controller and the node agent."""
