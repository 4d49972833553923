"""Small applications for the HTTP tests: imported in process, or by servers (uvicorn,
waitress) started as subprocesses, which configure them through environment variables."""
