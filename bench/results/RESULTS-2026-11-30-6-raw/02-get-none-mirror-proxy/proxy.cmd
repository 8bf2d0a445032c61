/tmp/mirror-bench.mwhmFz/bin/mirror-proxy --listen 127.0.0.1:19080 --upstream http://127.0.0.1:19001 --admin 127.0.0.1:19090 --drain-timeout 1s --workers 2
