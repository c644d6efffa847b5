"""The notebook layer: IPython magics (`magics`) and the live widget (`widget`), on top
of the public API."""
