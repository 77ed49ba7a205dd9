"""Serving: a live web demo of a trained model (`eidos serve`). `live` makes the images and notices without any
web library; `app` lays them out as a gradio page (the optional `serve` extra)."""
