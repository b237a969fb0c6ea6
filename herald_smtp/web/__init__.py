"""The HTTP layer: the Flask app, its blueprints and every response it gives."""
