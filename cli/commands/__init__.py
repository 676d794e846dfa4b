# SPDX-License-Identifier: MIT
"""One module per `trackleak` subcommand; each defines ``register(app)``."""
