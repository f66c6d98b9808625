"""The HTTP surface: the litestar app (``app``), bearer auth (``auth``), the live
conversation feeds (``feeds``) and the uvicorn runner with graceful drain (``serve``)."""
