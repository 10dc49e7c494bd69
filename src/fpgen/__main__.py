from fpgen.cli import main

main()
