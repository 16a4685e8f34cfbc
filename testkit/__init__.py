"""What the tests and the benchmarks both need, and nothing of either: the native stack's layout (names, ports,
state directory, the services' environment, the RabbitMQ management API) and the sample photographs.

``bench/`` imports this, never ``tests/``; it is not part of the service image (setuptools packages only
``shared`` and ``services``).
"""
