# Sourced by run_draft.sh and run_budget_v3.sh: the gguf wheel on PYTHONPATH and G = SmolLM2's GGUF in /root/h6,
# put together from the parts park.sh parked (1, 2) and the part this call carries (.carry/q3), md5 checked.
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/gguf-*.whl && export PYTHONPATH=$PWD:/tmp/site
G=/root/h6/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f $G ] || cat /root/h6/gguf.part1 /root/h6/gguf.part2 .carry/q3/gguf.part3 > $G || exit 3
echo "a1231443440b107ff29f02bdb38c9d0a  $G" | md5sum -c - || exit 4
