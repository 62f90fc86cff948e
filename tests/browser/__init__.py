"""End-to-end tests of the web uploader (web/dist) in headless Chromium against real `modeldrop serve`."""
