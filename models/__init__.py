"""What training and serving share: architecture, preprocessing, MC dropout, uncertainty math.

Imports no BentoML, HTTP or file-format code.
"""
