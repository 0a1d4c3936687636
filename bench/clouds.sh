#!/usr/bin/env bash
# Copy-through between clouds, on the local emulators, in one run: fanout running a function
# that copies /in to /out from S3 (Garage) to Google Cloud Storage (fake-gcs-server) and from
# Azure Blob (Azurite) to S3, against `rclone copy` between the same stores with the same
# number of transfers. Each side downloads and uploads every byte (different stores: no
# server-side copy). fanout's GCS writes pass the XML proxy of scripts/test-gcs; rclone
# speaks the emulator's JSON API directly. SMALL objects of 256 KiB (default 500) and LARGE
# of 64 MiB (default 4). Starts the three servers with the project's scripts. RUNS (3), medians.
# rclone reaches Azurite through a container SAS URL: Debian's rclone (1.60) takes an Azure
# endpoint only as a host suffix (https://ACCOUNT.SUFFIX), which a loopback emulator is not.
source "$(dirname "$0")/lib.sh"
need rclone
RUNS=${RUNS:-3}
SMALL=${SMALL:-500}
LARGE=${LARGE:-4}
TRANSFERS=${TRANSFERS:-16}
eval "$("$ROOT/scripts/test-s3" start)"
cleanups+=("'$ROOT/scripts/test-s3' stop")
eval "$("$ROOT/scripts/test-azure" start)"
cleanups+=("'$ROOT/scripts/test-azure' stop")
eval "$("$ROOT/scripts/test-gcs" start)"
cleanups+=("'$ROOT/scripts/test-gcs' stop")
build_fanout
WASM=$(wasm_of "$ROOT/bench/copy")
AZ_ENDPOINT=$(sed -n 's/.*BlobEndpoint=\([^;]*\).*/\1/p' <<<"$AZURE_STORAGE_CONNECTION_STRING")
AZ_KEY=$(sed -n 's/.*AccountKey=\([^;]*\).*/\1/p' <<<"$AZURE_STORAGE_CONNECTION_STRING")
container_sas_url() { # a day's read/write/list/delete on the test container, signed with the account key
	"$FANOUT_TEST_AZURE_PYTHON" -c "
import datetime, sys
from azure.storage.blob import generate_container_sas, ContainerSasPermissions
endpoint, key, container = sys.argv[1:]
sas = generate_container_sas('devstoreaccount1', container, account_key=key,
    permission=ContainerSasPermissions(read=True, write=True, list=True, delete=True, add=True, create=True),
    expiry=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1))
print(f'{endpoint}/{container}?{sas}')" "$AZ_ENDPOINT" "$AZ_KEY" "$FANOUT_TEST_AZURE_CONTAINER"
}
export RCLONE_CONFIG_S_TYPE=s3 RCLONE_CONFIG_S_PROVIDER=Other RCLONE_CONFIG_S_ENDPOINT=$AWS_ENDPOINT_URL \
	RCLONE_CONFIG_S_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID RCLONE_CONFIG_S_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY \
	RCLONE_CONFIG_S_REGION=${AWS_REGION:-us-east-1} RCLONE_CONFIG_S_FORCE_PATH_STYLE=true \
	RCLONE_CONFIG_A_TYPE=azureblob RCLONE_CONFIG_A_SAS_URL=$(container_sas_url) \
	RCLONE_CONFIG_G_TYPE="google cloud storage" RCLONE_CONFIG_G_ANONYMOUS=true \
	RCLONE_CONFIG_G_ENDPOINT=$FANOUT_TEST_GCS_JSON/storage/v1/
RCLONE="env -u AWS_CA_BUNDLE rclone"
S3B=$FANOUT_TEST_BUCKET AZC=$FANOUT_TEST_AZURE_CONTAINER GCB=$FANOUT_TEST_GCS_BUCKET
make_dataset() { # NAME COUNT SIZE_BYTES
	mkdir -p "$WORK/$1"
	python3 -c "
import os
for i in range($2):
    with open(os.path.join('$WORK/$1', f'o{i:05}.bin'), 'wb') as f:
        f.write(os.urandom($3))"
	echo "$1 $(du -sb "$WORK/$1" | cut -f1)" >>"$WORK/sizes"
	$RCLONE copy "$WORK/$1" "S:$S3B/src-$1" --transfers "$TRANSFERS" -q
	$RCLONE copy "$WORK/$1" "A:$AZC/src-$1" --transfers "$TRANSFERS" -q
}
make_dataset small "$SMALL" $((256 << 10))
make_dataset large "$LARGE" $((64 << 20))
for set in small large; do
	for run in $(seq 1 "$RUNS"); do
		timed "s3-gcs-fanout-$set" "$FANOUT" run --input "s3://$S3B/src-$set/" --function "$WASM" \
			--output "gs://$GCB/fanout-$set-$run/" --quiet
		timed "s3-gcs-rclone-$set" $RCLONE copy "S:$S3B/src-$set" "G:$GCB/rclone-$set-$run" \
			--transfers "$TRANSFERS" --checkers "$TRANSFERS" -q
		timed "az-s3-fanout-$set" "$FANOUT" run --input "az://$AZC/src-$set/" --function "$WASM" \
			--output "s3://$S3B/fanout-$set-$run/" --quiet
		timed "az-s3-rclone-$set" $RCLONE copy "A:$AZC/src-$set" "S:$S3B/rclone-$set-$run" \
			--transfers "$TRANSFERS" --checkers "$TRANSFERS" -q
	done
done
report
python3 -c "
import statistics
sizes = dict(l.split() for l in open('$WORK/sizes'))
times = {}
for line in open('$WORK/times'):
    label, wall, *_ = line.strip().split('|')
    times.setdefault(label, []).append(float(wall))
for route in ('s3-gcs', 'az-s3'):
    for s in ('small', 'large'):
        mb = int(sizes[s]) / 1e6
        f = statistics.median(times[f'{route}-fanout-{s}']); r = statistics.median(times[f'{route}-rclone-{s}'])
        print(f'{route} {s}: fanout {mb/f:.0f} MB/s, rclone {mb/r:.0f} MB/s, ratio {r/f:.2f}x')"
