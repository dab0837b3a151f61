from license_keeper.cli import main

main()
