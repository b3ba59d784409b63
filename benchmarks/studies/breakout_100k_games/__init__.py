"""The breakout_100k_games study: see its README.md."""
