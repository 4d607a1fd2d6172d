from seqvae_cli.cli import main

main()
