"""The smallest callrt program: a Greeter component in a worker process, called over a Unix socket and TCP."""
