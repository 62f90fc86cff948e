"""Code the tests share: one module per thing, and the only place test code is shared (test_layout.py checks).

    tus        the one tus test client (TusClient) and requests written by hand (RawRequest, RawPatch, raw_request)
    rufh       the Resumable Uploads for HTTP test client (RufhClient), and RawExchange, which reads 104s too
    app        the app in process, for the per-method handler tests (make_app: the one place tests build it)
    processes  real `modeldrop serve`, `modeldrop worker`, redis-server and nginx processes on free ports
    clients    real tus clients: tus-js-client (tests/js/upload.mjs, tus or RUFH) and tuspy, and what they saw (Trace)
    models     model files and their hashes, and models/ as llama-server sees it (ModelsWatcher)
    proxy      a TCP relay that throttles, cuts or half-opens connections
    disk       a small tmpfs to fill up
    powercut   a FUSE file system that loses what was not synced when the power is cut
    llama      a real llama-server
    cli        the `modeldrop` command run as a user runs it
    figures    the line a reliability scenario reports
    metrics    samples of /metrics
    loop       an asyncio scenario run from a synchronous test
"""
