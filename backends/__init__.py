"""I/O backends for plabs-proto (installed as ``plabs_proto.backends``)."""
