from .datalists import main

main()
