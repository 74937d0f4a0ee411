from bigmodel_cli.cli import main

main()
