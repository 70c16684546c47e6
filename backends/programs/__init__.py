"""The programs built on the backends: the ``plabs`` command (``cli``), the OpenAI-compatible
gateway (``gateway``, served by ``serve``) and the local emulator (``emulator``)."""
