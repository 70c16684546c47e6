"""The Perplexity ask service (``POST /rest/sse/perplexity_ask``, answered as Server-Sent Events).

* :mod:`plabs_proto.perplexity.sse`: an incremental ``text/event-stream`` decoder.
* :mod:`plabs_proto.perplexity.answer`: the answer decoder (every shape the service has used) into
  :mod:`plabs_proto.events` events.
* :mod:`plabs_proto.perplexity.request`: what a client sends (warm-up, the ask, headers), the models,
  the service's catalog and a cookies.txt reader.
"""
