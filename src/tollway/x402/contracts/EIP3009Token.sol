// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

/**
 * @title EIP3009Token
 * @notice Minimal, dependency-free ERC-20 test token (6 decimals) that implements
 *         EIP-3009 "Transfer With Authorization" the same way Circle's USDC does
 *         (FiatTokenV2 / FiatTokenV2_2):
 *
 *           - transferWithAuthorization  (v,r,s overload and `bytes signature` overload)
 *           - receiveWithAuthorization   (v,r,s overload and `bytes signature` overload)
 *           - cancelAuthorization        (v,r,s overload and `bytes signature` overload)
 *           - authorizationState(authorizer, nonce)
 *           - events AuthorizationUsed / AuthorizationCanceled
 *
 *         Typehashes, EIP-712 domain layout ({name, version, chainId, verifyingContract}),
 *         checks, their order, and revert strings mirror USDC so that off-chain code
 *         tested against this token behaves the same against real USDC.
 *
 *         Intentionally NOT included (USDC features irrelevant to EIP-3009 tests):
 *           - proxy/upgradeability, pausing, blacklisting, multiple minters, rescuer
 *           - EIP-2612 permit
 *           - ERC-1271 (smart-contract wallet) signature validation that USDC v2.2 added
 *             in its SignatureChecker: here every signer is validated with ecrecover only.
 *
 *         This contract is for tests. It has not been audited.
 */
contract EIP3009Token {
    // ---------------------------------------------------------------------
    // EIP-712 / EIP-3009 constants (identical to USDC FiatTokenV2)
    // ---------------------------------------------------------------------

    /// @dev keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")
    bytes32 private constant _EIP712_DOMAIN_TYPEHASH =
        0x8b73c3c69bb8fe3d512ecc4cf759cc79239f7b179b0ffacaa9a75d522b39400f;

    /// @dev keccak256("TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)")
    bytes32 public constant TRANSFER_WITH_AUTHORIZATION_TYPEHASH =
        0x7c7c6cdb67a18743f49ec6fa9b35f50d52ed05cbed4cc592e13b44501c1a2267;

    /// @dev keccak256("ReceiveWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)")
    bytes32 public constant RECEIVE_WITH_AUTHORIZATION_TYPEHASH =
        0xd099cc98ef71107a616c4f0f941f04c322d8e254fe26b3c6668db87aae413de8;

    /// @dev keccak256("CancelAuthorization(address authorizer,bytes32 nonce)")
    bytes32 public constant CANCEL_AUTHORIZATION_TYPEHASH =
        0x158b0a9edf7a828aad02f63cd515c68ef2f50ba807396f6d12842833a1597429;

    /// @dev Upper bound for `s` (secp256k1n / 2), see EIP-2 and OpenZeppelin/USDC ECRecover.
    uint256 private constant _HALF_CURVE_ORDER =
        0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;

    // ---------------------------------------------------------------------
    // Token metadata
    // ---------------------------------------------------------------------

    string private _name;
    string private _version;
    string public constant symbol = "USDC";
    uint8 public constant decimals = 6;

    /// @notice The deployer; the only account allowed to mint.
    address public immutable owner;

    // Domain separator cache (recomputed if block.chainid changes, e.g. after a fork).
    bytes32 private immutable _HASHED_NAME;
    bytes32 private immutable _HASHED_VERSION;
    uint256 private immutable _CACHED_CHAIN_ID;
    bytes32 private immutable _CACHED_DOMAIN_SEPARATOR;

    // ---------------------------------------------------------------------
    // ERC-20 state
    // ---------------------------------------------------------------------

    uint256 public totalSupply;
    mapping(address => uint256) public balanceOf;
    mapping(address => mapping(address => uint256)) public allowance;

    // ---------------------------------------------------------------------
    // EIP-3009 state: authorizer => nonce => used-or-canceled
    // ---------------------------------------------------------------------

    mapping(address => mapping(bytes32 => bool)) private _authorizationStates;

    // ---------------------------------------------------------------------
    // Events
    // ---------------------------------------------------------------------

    event Transfer(address indexed from, address indexed to, uint256 value);
    event Approval(address indexed owner, address indexed spender, uint256 value);
    event AuthorizationUsed(address indexed authorizer, bytes32 indexed nonce);
    event AuthorizationCanceled(address indexed authorizer, bytes32 indexed nonce);

    // ---------------------------------------------------------------------
    // Construction / metadata
    // ---------------------------------------------------------------------

    /**
     * @param name_    EIP-712 domain name and ERC-20 name (USDC: "USD Coin" on mainnet,
     *                 "USDC" on some testnets).
     * @param version_ EIP-712 domain version (USDC: "2").
     */
    constructor(string memory name_, string memory version_) {
        _name = name_;
        _version = version_;
        owner = msg.sender;
        // Locals instead of reading immutables in the constructor (keeps ^0.8.20 compatible).
        bytes32 hashedName = keccak256(bytes(name_));
        bytes32 hashedVersion = keccak256(bytes(version_));
        _HASHED_NAME = hashedName;
        _HASHED_VERSION = hashedVersion;
        _CACHED_CHAIN_ID = block.chainid;
        _CACHED_DOMAIN_SEPARATOR = keccak256(
            abi.encode(_EIP712_DOMAIN_TYPEHASH, hashedName, hashedVersion, block.chainid, address(this))
        );
    }

    function name() external view returns (string memory) {
        return _name;
    }

    /// @notice EIP-712 domain version, as exposed by USDC's `version()`.
    function version() external view returns (string memory) {
        return _version;
    }

    /// @notice EIP-712 domain separator for the current chain.
    function DOMAIN_SEPARATOR() external view returns (bytes32) {
        return _domainSeparator();
    }

    // ---------------------------------------------------------------------
    // Minting (test helper)
    // ---------------------------------------------------------------------

    /// @notice Mint `amount` base units (6 decimals) to `to`. Owner only.
    function mint(address to, uint256 amount) external {
        require(msg.sender == owner, "EIP3009Token: caller is not the owner");
        require(to != address(0), "FiatToken: mint to the zero address");
        require(amount > 0, "FiatToken: mint amount not greater than 0");
        totalSupply += amount;
        balanceOf[to] += amount;
        emit Transfer(address(0), to, amount);
    }

    // ---------------------------------------------------------------------
    // ERC-20
    // ---------------------------------------------------------------------

    function transfer(address to, uint256 value) external returns (bool) {
        _transfer(msg.sender, to, value);
        return true;
    }

    function approve(address spender, uint256 value) external returns (bool) {
        _approve(msg.sender, spender, value);
        return true;
    }

    function transferFrom(address from, address to, uint256 value) external returns (bool) {
        uint256 allowed = allowance[from][msg.sender];
        require(value <= allowed, "ERC20: transfer amount exceeds allowance");
        _transfer(from, to, value);
        allowance[from][msg.sender] = allowed - value; // no Approval event, like USDC
        return true;
    }

    function increaseAllowance(address spender, uint256 increment) external returns (bool) {
        _approve(msg.sender, spender, allowance[msg.sender][spender] + increment);
        return true;
    }

    function decreaseAllowance(address spender, uint256 decrement) external returns (bool) {
        uint256 current = allowance[msg.sender][spender];
        require(decrement <= current, "ERC20: decreased allowance below zero");
        _approve(msg.sender, spender, current - decrement);
        return true;
    }

    // ---------------------------------------------------------------------
    // EIP-3009: views
    // ---------------------------------------------------------------------

    /**
     * @notice Returns the state of an authorization.
     * @dev Nonces are random 32-byte values, not sequential.
     * @return True if the nonce has been used or canceled.
     */
    function authorizationState(address authorizer, bytes32 nonce) external view returns (bool) {
        return _authorizationStates[authorizer][nonce];
    }

    // ---------------------------------------------------------------------
    // EIP-3009: transferWithAuthorization
    // ---------------------------------------------------------------------

    /**
     * @notice Execute a transfer with a signed authorization (v, r, s form).
     * @param from        Payer's address (Authorizer)
     * @param to          Payee's address
     * @param value       Amount to be transferred
     * @param validAfter  The time after which this is valid (unix time, exclusive)
     * @param validBefore The time before which this is valid (unix time, exclusive)
     * @param nonce       Unique nonce
     */
    function transferWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external {
        _transferWithAuthorization(from, to, value, validAfter, validBefore, nonce, abi.encodePacked(r, s, v));
    }

    /**
     * @notice Execute a transfer with a signed authorization (packed 65-byte r||s||v form,
     *         as added in USDC FiatTokenV2_2).
     */
    function transferWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        bytes memory signature
    ) external {
        _transferWithAuthorization(from, to, value, validAfter, validBefore, nonce, signature);
    }

    // ---------------------------------------------------------------------
    // EIP-3009: receiveWithAuthorization (caller must be the payee; prevents
    // front-running when the call is made from a contract)
    // ---------------------------------------------------------------------

    function receiveWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external {
        _receiveWithAuthorization(from, to, value, validAfter, validBefore, nonce, abi.encodePacked(r, s, v));
    }

    function receiveWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        bytes memory signature
    ) external {
        _receiveWithAuthorization(from, to, value, validAfter, validBefore, nonce, signature);
    }

    // ---------------------------------------------------------------------
    // EIP-3009: cancelAuthorization
    // ---------------------------------------------------------------------

    function cancelAuthorization(address authorizer, bytes32 nonce, uint8 v, bytes32 r, bytes32 s) external {
        _cancelAuthorization(authorizer, nonce, abi.encodePacked(r, s, v));
    }

    function cancelAuthorization(address authorizer, bytes32 nonce, bytes memory signature) external {
        _cancelAuthorization(authorizer, nonce, signature);
    }

    // ---------------------------------------------------------------------
    // Internal: EIP-3009 (same order of checks as USDC's EIP3009.sol)
    // ---------------------------------------------------------------------

    function _transferWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        bytes memory signature
    ) internal {
        _requireValidAuthorization(from, nonce, validAfter, validBefore);
        _requireValidSignature(
            from,
            keccak256(
                abi.encode(TRANSFER_WITH_AUTHORIZATION_TYPEHASH, from, to, value, validAfter, validBefore, nonce)
            ),
            signature
        );
        _markAuthorizationAsUsed(from, nonce);
        _transfer(from, to, value);
    }

    function _receiveWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        bytes memory signature
    ) internal {
        require(to == msg.sender, "FiatTokenV2: caller must be the payee");
        _requireValidAuthorization(from, nonce, validAfter, validBefore);
        _requireValidSignature(
            from,
            keccak256(
                abi.encode(RECEIVE_WITH_AUTHORIZATION_TYPEHASH, from, to, value, validAfter, validBefore, nonce)
            ),
            signature
        );
        _markAuthorizationAsUsed(from, nonce);
        _transfer(from, to, value);
    }

    function _cancelAuthorization(address authorizer, bytes32 nonce, bytes memory signature) internal {
        _requireUnusedAuthorization(authorizer, nonce);
        _requireValidSignature(
            authorizer, keccak256(abi.encode(CANCEL_AUTHORIZATION_TYPEHASH, authorizer, nonce)), signature
        );
        _authorizationStates[authorizer][nonce] = true;
        emit AuthorizationCanceled(authorizer, nonce);
    }

    /// @dev Reverts unless `signature` is `signer`'s signature over the EIP-712 digest of `structHash`.
    function _requireValidSignature(address signer, bytes32 structHash, bytes memory signature) private view {
        bytes32 digest = keccak256(abi.encodePacked("\x19\x01", _domainSeparator(), structHash));
        require(_recover(digest, signature) == signer, "FiatTokenV2: invalid signature");
    }

    function _requireUnusedAuthorization(address authorizer, bytes32 nonce) private view {
        require(!_authorizationStates[authorizer][nonce], "FiatTokenV2: authorization is used or canceled");
    }

    /// @dev validAfter and validBefore are both exclusive bounds, as in USDC.
    function _requireValidAuthorization(address authorizer, bytes32 nonce, uint256 validAfter, uint256 validBefore)
        private
        view
    {
        require(block.timestamp > validAfter, "FiatTokenV2: authorization is not yet valid");
        require(block.timestamp < validBefore, "FiatTokenV2: authorization is expired");
        _requireUnusedAuthorization(authorizer, nonce);
    }

    function _markAuthorizationAsUsed(address authorizer, bytes32 nonce) private {
        _authorizationStates[authorizer][nonce] = true;
        emit AuthorizationUsed(authorizer, nonce);
    }

    // ---------------------------------------------------------------------
    // Internal: signature recovery (USDC's ECRecover library, inlined)
    // ---------------------------------------------------------------------

    /// @dev Splits a 65-byte r||s||v signature and recovers the signer.
    function _recover(bytes32 digest, bytes memory signature) private pure returns (address) {
        require(signature.length == 65, "ECRecover: invalid signature length");
        bytes32 r;
        bytes32 s;
        uint8 v;
        // solhint-disable-next-line no-inline-assembly
        assembly {
            r := mload(add(signature, 0x20))
            s := mload(add(signature, 0x40))
            v := byte(0, mload(add(signature, 0x60)))
        }
        return _recover(digest, v, r, s);
    }

    /**
     * @dev ecrecover with the standard malleability checks:
     *      - `s` must be in the lower half order (EIP-2),
     *      - `v` must be 27 or 28,
     *      - the recovered address must not be zero.
     */
    function _recover(bytes32 digest, uint8 v, bytes32 r, bytes32 s) private pure returns (address) {
        if (uint256(s) > _HALF_CURVE_ORDER) {
            revert("ECRecover: invalid signature 's' value");
        }
        if (v != 27 && v != 28) {
            revert("ECRecover: invalid signature 'v' value");
        }
        address signer = ecrecover(digest, v, r, s);
        require(signer != address(0), "ECRecover: invalid signature");
        return signer;
    }

    // ---------------------------------------------------------------------
    // Internal: EIP-712 domain
    // ---------------------------------------------------------------------

    function _domainSeparator() private view returns (bytes32) {
        return block.chainid == _CACHED_CHAIN_ID ? _CACHED_DOMAIN_SEPARATOR : _buildDomainSeparator();
    }

    function _buildDomainSeparator() private view returns (bytes32) {
        return keccak256(
            abi.encode(_EIP712_DOMAIN_TYPEHASH, _HASHED_NAME, _HASHED_VERSION, block.chainid, address(this))
        );
    }

    // ---------------------------------------------------------------------
    // Internal: ERC-20
    // ---------------------------------------------------------------------

    function _transfer(address from, address to, uint256 value) internal {
        require(from != address(0), "ERC20: transfer from the zero address");
        require(to != address(0), "ERC20: transfer to the zero address");
        uint256 fromBalance = balanceOf[from];
        require(value <= fromBalance, "ERC20: transfer amount exceeds balance");
        unchecked {
            balanceOf[from] = fromBalance - value;
        }
        balanceOf[to] += value;
        emit Transfer(from, to, value);
    }

    function _approve(address holder, address spender, uint256 value) internal {
        require(holder != address(0), "ERC20: approve from the zero address");
        require(spender != address(0), "ERC20: approve to the zero address");
        allowance[holder][spender] = value;
        emit Approval(holder, spender, value);
    }
}
