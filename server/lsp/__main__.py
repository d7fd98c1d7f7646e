"""`python -m server.lsp`: the Ex-Ray language server over stdio."""
from .server import main

if __name__ == "__main__":
    main()
