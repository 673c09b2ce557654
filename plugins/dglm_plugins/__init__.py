"""dglm's built-in attribute plugins, written exactly as an outside plugin would be."""
