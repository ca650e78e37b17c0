from sparse_edit.cli import main

main()
