"""One module per pipeline stage; each task is a plain function underneath."""
