"""What a single chapter needs and nothing reusable: one module per notebook, imported only by it.

Everything a second chapter (or a user) could use lives in the library's concept modules; a
module here assembles them for its chapter: the experiments it runs, its tables and its
findings (written to ``outputs/<profile>/findings/<chapter>.json``).
"""
