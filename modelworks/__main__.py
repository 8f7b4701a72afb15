from modelworks.cli import main

main()
