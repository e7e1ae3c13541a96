# mdsync — developer targets. `make help` lists them.
GO        ?= go
BIN       ?= bin
PROTOC_GEN_GO_VERSION := v1.36.12

.PHONY: help build test test-race vet fmt proto bench run ci kafka-test clean web web-test

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

build: ## build the binaries into ./bin
	$(GO) build -o $(BIN)/ ./cmd/...

test: ## the README's test command
	$(GO) test ./... -count=1

test-race: ## tests under the race detector
	$(GO) test -race ./... -count=1

vet: ## go vet + gofmt check
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); exit 1)

fmt: ## gofmt the tree
	gofmt -w $$(git ls-files '*.go')

proto: ## regenerate engine/enginepb from the .proto files (needs protoc)
	GOBIN=$(CURDIR)/$(BIN) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	PATH=$(CURDIR)/$(BIN):$$PATH protoc -I engine/enginepb \
		--go_out=. --go_opt=module=github.com/mdsync/mdsync \
		engine/enginepb/mdsync/v1/*.proto

bench: ## Go benchmarks (see benchmarks/RESULTS.md for recorded figures)
	$(GO) test -run '^$$' -bench . -benchtime 2s ./adapters/... ./projections/... ./benchmarks/...

run: ## run the server on the embedded default
	$(GO) run ./cmd/mdsync serve

kafka-test: ## fetch, start and stop a real Apache Kafka broker around the Kafka suites
	bash .ci/kafka/ci.sh

web: ## build the web SDK and the console's embedded assets (needs Node)
	cd client/web && npm ci && npm run build

web-test: ## the web SDK's Node tests and the browser tests (Chromium at /usr/bin/chromium)
	cd client/web && npm ci && npm test && node scripts/test.mjs test/browser.test.mjs test/readme.test.mjs

ci: ## what CI runs
	bash .ci/run

clean:
	rm -rf $(BIN)
