"""Load tests for hookserve (Locust). Entry point: ``locustfile.py``; see docs/operate.md."""
