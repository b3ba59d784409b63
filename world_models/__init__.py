"""World models: pure PyTorch, no gymnasium, no SB3, no CLI (see ARCHITECTURE.md)."""
