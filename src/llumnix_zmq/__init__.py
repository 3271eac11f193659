"""llumnix-zmq: Llumnix-style LLM serving with live migration, on a ZeroMQ mesh."""

__version__ = "0.1.0"
