module kakehashi.dev/tools/pause

go 1.26.0
